#!/usr/bin/env bash
# The onnx-docker target: one hardened container, health-gated zero-downtime updates.
# Run after `bash examples/quickstart.sh` (its SQLite store) or with MLFLOW_TRACKING_URI set.
set -euo pipefail
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///quickstart-output/mlflow.db}
MODEL=${MODEL:-models:/churn-onnx@champion}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}

mlflow deployments create -t onnx-docker --name churn -m "$MODEL" \
    -C port=8080 -C base_image="$BASE_IMAGE" -C memory=512m -C cpus=1
echo '[{"age": 40, "monthly_charges": 80.5, "tenure_months": 12, "support_calls": 2,
        "contract": "monthly", "region": "north"}]' > /tmp/churn-rows.json
mlflow deployments predict -t onnx-docker --name churn --input-path /tmp/churn-rows.json
mlflow deployments get -t onnx-docker --name churn
mlflow deployments update -t onnx-docker --name churn      # re-resolves the alias
mlflow deployments delete -t onnx-docker --name churn -C remove_image=true
