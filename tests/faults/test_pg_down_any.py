"""PostgreSQL down under load with ack.policy = any: a private PostgreSQL is
stopped with `pg_ctl stop -m immediate` for >= 30 s while messages flow, then
started again. See pg_outage.py for the checks.

  test_pg_down_any.py         the broker rides out the outage
  test_pg_down_any.py crash   the broker is also killed (-9) mid-outage and
                              restarted when PostgreSQL is back: the next
                              broker must backfill what was acked DEGRADED
  test_pg_down_any.py both    log.dir (a tmpfs) is also full for 12 s of the
                              outage: with neither store, no ack at all"""
import sys

import pg_outage

pg_outage.run('any', crash=sys.argv[1:] == ['crash'],
              both=sys.argv[1:] == ['both'])
