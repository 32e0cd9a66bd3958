-- A demo regional schema: what a fleet's scheduler and proxies might share.
CREATE TABLE machines (
    id TEXT PRIMARY KEY NOT NULL,
    app TEXT NOT NULL DEFAULT '',
    region TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'created',
    cpus INTEGER,
    updated_at INTEGER
);
CREATE INDEX machines_app ON machines (app);

CREATE TABLE services (
    app TEXT NOT NULL,
    port INTEGER NOT NULL,
    protocol TEXT NOT NULL DEFAULT 'tcp',
    PRIMARY KEY (app, port)
);
