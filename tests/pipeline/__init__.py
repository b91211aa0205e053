"""The pipeline as a whole, as it is run and watched: a live stack under Prometheus, its dashboards and alert
rules (grafana/, prometheus/), and running it the way operators do (bin/run, gunicorn, honcho, console scripts)."""
