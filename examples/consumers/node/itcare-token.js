// Read the ITCare token from the mounted Secret: re-read the file, never keep it for
// the life of the process. Node.js 16+, no dependencies.
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const file = path.join(process.env.ITCARE_TOKEN_DIR || '/var/run/itcare', 'authorization');
let cached = { value: '', readAt: 0 };

/** The Authorization header value, read again when the copy is older than maxAgeMs. */
function authorization(maxAgeMs = 5000) {
  if (!cached.value || Date.now() - cached.readAt > maxAgeMs) {
    cached = { value: fs.readFileSync(file, 'utf8').trim(), readAt: Date.now() };
  }
  return cached.value;
}

module.exports = { authorization };

if (require.main === module) {
  // Demo: once a second, print which token is in use (a fingerprint, never the token).
  let left = Number(process.argv[2] || Infinity);
  const tick = () => {
    console.log(crypto.createHash('sha256').update(authorization(0)).digest('hex'));
    if (--left > 0) setTimeout(tick, 1000);
  };
  tick();
}
