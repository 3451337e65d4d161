"""Alerting as code: ElastAlert 2 rules (rules/*.yaml) and the config they run with."""
