"""The operator's view: users (search, suspend, grant), jobs and queues, money, the audit
log of every admin action, and Prometheus metrics. It sits above every other domain: it
reads them all."""
