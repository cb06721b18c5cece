-- Agents: enrollment, certificates, revocation, command signing and the command queue.

-- CA rotation: the active CA is the row named 'tundra-ca'; a rotated-out CA keeps its row under a
-- new name with status 'previous' and stays trusted until retire_at.
ALTER TABLE pki_keys ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE pki_keys ADD COLUMN retire_at TEXT;

-- Ed25519 keys the control plane signs with (purpose 'command'). private_key is an envelope bound
-- to signing_keys.private_key and the row id (an encrypted column); public_key is raw 32 bytes.
CREATE TABLE signing_keys (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    key_id TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    private_key BLOB NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- One-time join tokens: only the SHA-256 of the secret is stored.
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    token_hash BLOB NOT NULL UNIQUE,
    ca_fingerprint TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);

CREATE INDEX join_tokens_server ON join_tokens(server_id);

-- An agent is one enrolment of one server. At most one agent per server is 'active'; a
-- re-enrolment revokes the previous one. Presence columns are written by the gateway.
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL,
    cert_not_after TEXT NOT NULL,
    agent_version TEXT NOT NULL DEFAULT '',
    hostname TEXT NOT NULL DEFAULT '',
    facts TEXT NOT NULL DEFAULT '{}',
    connected_at TEXT,
    last_seen_at TEXT,
    last_address TEXT,
    enrolled_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE INDEX agents_server ON agents(server_id);

-- Every certificate issued to an agent. The revoked-serial list is the rows with revoked_at set.
CREATE TABLE agent_certificates (
    serial TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE INDEX agent_certificates_agent ON agent_certificates(agent_id);

-- Signed commands for agents. status: queued, sent, succeeded, failed, refused, expired.
CREATE TABLE agent_commands (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    envelope BLOB NOT NULL,
    signature BLOB NOT NULL,
    key_id TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    error TEXT,
    issued_by TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    sent_at TEXT,
    finished_at TEXT
);

CREATE INDEX agent_commands_status ON agent_commands(status);
CREATE INDEX agent_commands_agent ON agent_commands(agent_id);
