-- The failure breakdown (SPEC.md): each message's rank among its delivery's recipient
-- domains (1 to 10, the largest by messages; 0 for the others), the ranked domains'
-- names, and counters by domain rank and by failure type and reason, sharded like
-- delivery_counters. Deliveries prepared before have every message at rank 0 and no
-- breakdown counters until ComputeStats recounts them.

ALTER TABLE sending_logs ADD COLUMN domain_rank smallint NOT NULL DEFAULT 0;

CREATE TABLE delivery_domains (
    delivery_id bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    domain_rank smallint NOT NULL,
    domain      text NOT NULL,
    PRIMARY KEY (delivery_id, domain_rank)
);

CREATE TABLE delivery_domain_counters (
    delivery_id  bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    domain_rank  smallint NOT NULL,
    shard        smallint NOT NULL,
    to_deliver   bigint NOT NULL DEFAULT 0,
    relayed      bigint NOT NULL DEFAULT 0,
    delivered    bigint NOT NULL DEFAULT 0,
    soft_bounced bigint NOT NULL DEFAULT 0,
    hard_bounced bigint NOT NULL DEFAULT 0,
    expired      bigint NOT NULL DEFAULT 0,
    opened       bigint NOT NULL DEFAULT 0,
    clicked      bigint NOT NULL DEFAULT 0,
    complained   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, domain_rank, shard)
);

-- Messages whose sending log is FAILED, by failure type and reason.
CREATE TABLE delivery_failure_counters (
    delivery_id    bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    failure_type   smallint NOT NULL,
    failure_reason smallint NOT NULL,
    shard          smallint NOT NULL,
    failed         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, failure_type, failure_reason, shard)
);
