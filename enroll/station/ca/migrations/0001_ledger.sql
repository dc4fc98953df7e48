-- The shared issuance ledger (docs/ca.md, "Ledger"). The rules live here,
-- as constraints, so that every station and any other writer obeys them.

-- The CA whose ledger this is: one database holds one issuing CA's ledger.
CREATE TABLE ca_binding (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    issuer_sha256 text NOT NULL CHECK (issuer_sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The key each device ID is bound to. It may change only while no live
-- (reserved or issued) certificate of the device refers to it: the
-- foreign key of certificates (device_id, live_key) forbids the update.
CREATE TABLE device_keys (
    device_id  text PRIMARY KEY,
    key_sha256 text NOT NULL CHECK (key_sha256 ~ '^[0-9a-f]{64}$'),
    UNIQUE (device_id, key_sha256)
);

-- One row per serial: reserved before signing, issued when the
-- certificate is released, revoked, or void (signing failed: no
-- certificate exists).
CREATE TABLE certificates (
    serial      text PRIMARY KEY CHECK (serial ~ '^[0-9a-f]+$'),
    device_id   text NOT NULL,
    key_sha256  text NOT NULL,
    status      text NOT NULL CHECK (status IN ('reserved', 'issued', 'revoked', 'void')),
    station     text NOT NULL DEFAULT '',
    reserved_at timestamptz NOT NULL,
    issued_at   timestamptz,
    not_before  timestamptz NOT NULL,
    not_after   timestamptz NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    attestation text NOT NULL DEFAULT '',
    ek_sha256   text NOT NULL DEFAULT '',
    -- The key while the row is live; NULL (not checked) once revoked or void.
    live_key    text GENERATED ALWAYS AS (CASE WHEN status IN ('reserved', 'issued') THEN key_sha256 END) STORED,
    FOREIGN KEY (device_id, live_key) REFERENCES device_keys (device_id, key_sha256),
    CHECK (status <> 'issued' OR issued_at IS NOT NULL),
    CHECK (status <> 'revoked' OR revoked_at IS NOT NULL)
);
CREATE INDEX certificates_device ON certificates (device_id);
CREATE INDEX certificates_reserved ON certificates (reserved_at) WHERE status = 'reserved';
CREATE INDEX certificates_revoked ON certificates (serial) WHERE status = 'revoked';

-- Rows are never deleted, identities never change, and status moves only
-- forward: reserved -> issued | revoked | void, issued -> revoked.
CREATE FUNCTION certificates_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger rows are never deleted (serial %)', OLD.serial USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.serial <> OLD.serial OR NEW.device_id <> OLD.device_id OR NEW.key_sha256 <> OLD.key_sha256 THEN
        RAISE EXCEPTION 'ledger: serial % cannot change its serial, device or key', OLD.serial USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NOT (OLD.status = NEW.status
            OR (OLD.status = 'reserved' AND NEW.status IN ('issued', 'revoked', 'void'))
            OR (OLD.status = 'issued' AND NEW.status = 'revoked')) THEN
        RAISE EXCEPTION 'ledger: serial % cannot go from % to %', OLD.serial, OLD.status, NEW.status USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER certificates_guard BEFORE UPDATE OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION certificates_guard();

-- Boards refused at the attest step (no certificate).
CREATE TABLE refusals (
    id          bigserial PRIMARY KEY,
    time        timestamptz NOT NULL,
    device_id   text NOT NULL,
    key_sha256  text NOT NULL DEFAULT '',
    station     text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    attestation text NOT NULL DEFAULT '',
    ek_sha256   text NOT NULL DEFAULT ''
);
CREATE INDEX refusals_device ON refusals (device_id);
