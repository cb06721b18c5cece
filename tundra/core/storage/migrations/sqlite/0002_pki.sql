-- The internal PKI: CA keys and certificates. private_key is an envelope (encrypted column).
CREATE TABLE pki_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    cert_pem TEXT NOT NULL,
    private_key BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    not_after TEXT NOT NULL
);
