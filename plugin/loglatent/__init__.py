"""loglatent: learns each log stream's daily rhythm from syslog in Elasticsearch and reports anomalies."""

__version__ = "0.1.0"
