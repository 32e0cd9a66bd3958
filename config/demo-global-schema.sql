-- A demo global schema: the target of the `app_regions` rollup (which regions
-- run an app, and how many of its machines are started there). Each region's
-- leader writes its own rows; every node of every region reads all of them.
CREATE TABLE app_regions (
    app TEXT NOT NULL,
    region TEXT NOT NULL,
    machines INTEGER NOT NULL DEFAULT 0,
    started INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app, region)
);
