// Read the ITCare token from the mounted Secret: re-read the file, never keep it for
// the life of the process. Java 11+, run as `java ItcareToken.java`.
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.HexFormat;

public final class ItcareToken {
    private final Path file;
    private final long maxAgeNanos;
    private String value = "";
    private long readAt;

    ItcareToken(Path dir, long maxAgeMillis) {
        this.file = dir.resolve("authorization");
        this.maxAgeNanos = maxAgeMillis * 1_000_000L;
    }

    /** The Authorization header value, read again when the copy is older than maxAge. */
    synchronized String authorization() throws IOException {
        if (value.isEmpty() || System.nanoTime() - readAt > maxAgeNanos) {
            value = Files.readString(file, StandardCharsets.UTF_8).strip();
            readAt = System.nanoTime();
        }
        return value;
    }

    public static void main(String[] args) throws Exception {
        String dir = System.getenv().getOrDefault("ITCARE_TOKEN_DIR", "/var/run/itcare");
        ItcareToken token = new ItcareToken(Path.of(dir), 0);
        int n = args.length > 0 ? Integer.parseInt(args[0]) : Integer.MAX_VALUE;
        // Demo: once a second, print which token is in use (a fingerprint, never the token).
        for (int i = 0; i < n; i++) {
            byte[] digest = MessageDigest.getInstance("SHA-256")
                .digest(token.authorization().getBytes(StandardCharsets.UTF_8));
            System.out.println(HexFormat.of().formatHex(digest));
            Thread.sleep(1000);
        }
    }
}
