"""PostgreSQL down under load with ack.policy = any: a private PostgreSQL is
stopped with `pg_ctl stop -m immediate` for >= 30 s while messages flow, then
started again. See pg_outage.py for the checks."""
import pg_outage

pg_outage.run('any')
