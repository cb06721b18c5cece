-- A token minted by another token remembers its parent, so revoking the parent revokes it too.
ALTER TABLE api_tokens ADD COLUMN parent_id TEXT;

CREATE INDEX api_tokens_parent ON api_tokens(parent_id);
