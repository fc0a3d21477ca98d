#!/usr/bin/env bash
# Run the main job on bundled real logs: /var/log/messages of a public RedHat server, June 2005 to
# February 2006. The script starts a local Elasticsearch, loads the file, builds the per-event
# minute histograms, trains the CVAE ensemble and writes the anomalies of every day back.
set -euo pipefail
cd "$(dirname "$0")/.."

LOGLATENT="${LOGLATENT:-.venv/bin/loglatent}"
CONFIG=demo/config.yaml
INDEX=loglatent-demo-syslog

OUTPUT_INDEX=loglatent-demo-anomalies

LOGLATENT_ES_URL="$(scripts/elasticsearch.sh start)"
export LOGLATENT_ES_URL
echo "Elasticsearch: $LOGLATENT_ES_URL"

# The demo owns these names: start from scratch, so that no earlier run's data changes the result.
echo "== Removing the previous demo's indices ($INDEX, $OUTPUT_INDEX, $OUTPUT_INDEX-scores) and demo/data"
curl -fsS -X DELETE "$LOGLATENT_ES_URL/$INDEX,$OUTPUT_INDEX,$OUTPUT_INDEX-scores?ignore_unavailable=true" >/dev/null
rm -rf demo/data demo/output

echo "== Loading samples/loghub-linux/Linux.log (loghub)"
"$LOGLATENT" --config "$CONFIG" load samples/loghub-linux/Linux.log --index "$INDEX" --year 2005

echo "== Building per-event minute histograms"
"$LOGLATENT" --config "$CONFIG" ingest
"$LOGLATENT" --config "$CONFIG" export-histograms --out demo/output/histograms.npz

echo "== Training the CVAE ensemble (see demo/config.yaml for its size)"
"$LOGLATENT" --config "$CONFIG" --log-level INFO train  # INFO: one progress line every 30 s

echo "== Scoring every day"
"$LOGLATENT" --config "$CONFIG" --log-level WARNING detect --from 2005-06-09 --to 2006-02-28 --limit 25

echo
echo "Anomaly documents: index $OUTPUT_INDEX at $LOGLATENT_ES_URL"
echo "Histograms: demo/output/histograms.npz (numpy.load it: counts, host, template, template_id, day)"
echo "Stop Elasticsearch with: ES_PORT=${ES_PORT:-9200} scripts/elasticsearch.sh stop"
