// Read the ITCare token from the mounted Secret: re-read the file, never keep it for
// the life of the process. Standard library only.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

type tokenFile struct {
	path   string
	maxAge time.Duration
	mu     sync.Mutex
	value  string
	readAt time.Time
}

// Authorization returns the header value, read again when the copy is older than maxAge.
func (t *tokenFile) Authorization() (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.value == "" || time.Since(t.readAt) > t.maxAge {
		b, err := os.ReadFile(t.path)
		if err != nil {
			return "", err
		}
		t.value, t.readAt = strings.TrimSpace(string(b)), time.Now()
	}
	return t.value, nil
}

func main() {
	dir := os.Getenv("ITCARE_TOKEN_DIR")
	if dir == "" {
		dir = "/var/run/itcare"
	}
	token := &tokenFile{path: filepath.Join(dir, "authorization")}
	n := 1 << 30
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	// Demo: once a second, print which token is in use (a fingerprint, never the token).
	for i := 0; i < n; i++ {
		value, err := token.Authorization()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("%x\n", sha256.Sum256([]byte(value)))
		time.Sleep(time.Second)
	}
}
