#!/usr/bin/env bash
# The mlserver target: the ONNX twin inside a real MLServer (a local one we supervise).
# Needs: pip install 'mlflow-deploy-plugins[mlserver]'
set -euo pipefail
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///quickstart-output/mlflow.db}
MODEL=${MODEL:-models:/churn-onnx@champion}

mlflow deployments create -t mlserver:/tmp/mlserver-repo --name churn -m "$MODEL" \
    -C port=8082 -C max_batch_size=32 -C max_batch_time=0.002
echo '[{"age": 40, "monthly_charges": 80.5, "tenure_months": 12, "support_calls": 2,
        "contract": "monthly", "region": "north"}]' > /tmp/churn-rows.json
mlflow deployments predict -t mlserver:/tmp/mlserver-repo --name churn --input-path /tmp/churn-rows.json
curl -s http://127.0.0.1:8082/v2/models/churn                 # Open Inference Protocol metadata
mlflow deployments delete -t mlserver:/tmp/mlserver-repo --name churn   # the server stops with the last
