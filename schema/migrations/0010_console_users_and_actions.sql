-- depends: 0002_audit_calculated_at_brin
--
-- The on-call console's people and what they did. There are no default users: the first one is created with
-- `bidengine console-user add NAME --role operator`.
--
-- console_users: one row per person (a few dozen at most, ~200 bytes each: the argon2 hash is ~100 bytes).
-- session_epoch is copied into each session cookie; bumping it (password change, disable) ends every session
-- of that user at their next request.
CREATE TABLE console_users (
    id            bigserial   PRIMARY KEY,
    name          text        NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    role          text        NOT NULL CHECK (role IN ('viewer', 'operator')),
    password_hash text        NOT NULL,
    enabled       boolean     NOT NULL DEFAULT true,
    session_epoch integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    CONSTRAINT console_users_name_key UNIQUE (name)
);

-- console_actions: every operator action (replay, purge), attempted or done. Operators act a few times a
-- day: ~300 bytes per row; the console deletes rows older than a year when it records a new one.
CREATE TABLE console_actions (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    user_name text        NOT NULL,
    action    text        NOT NULL,
    target    text        NOT NULL,
    outcome   text        NOT NULL,
    detail    text        NOT NULL DEFAULT ''
);
CREATE INDEX console_actions_at ON console_actions (at);
