#!/usr/bin/env bash
# The onnx-sagemaker target: the same image on a SageMaker endpoint (costs money while it runs).
# Needs: pip install 'mlflow-deploy-plugins[aws,docker]', AWS credentials (`aws configure`), an
# execution role SageMaker can assume and a bucket for model.tar.gz.
set -euo pipefail
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///quickstart-output/mlflow.db}
MODEL=${MODEL:-models:/churn-onnx@champion}
: "${EXECUTION_ROLE_ARN:?set it to the SageMaker execution role}" "${BUCKET:?set it to an S3 bucket}"

# Try it first exactly as SageMaker runs it (Ctrl+C stops it):
#   mlflow deployments run-local -t onnx-sagemaker --name churn -m "$MODEL" -C port=8080
mlflow deployments create -t onnx-sagemaker --name churn -m "$MODEL" \
    -C execution_role_arn="$EXECUTION_ROLE_ARN" -C bucket="$BUCKET" \
    -C instance_type=ml.m5.large -C instance_count=1
echo '[{"age": 40, "monthly_charges": 80.5, "tenure_months": 12, "support_calls": 2,
        "contract": "monthly", "region": "north"}]' > /tmp/churn-rows.json
mlflow deployments predict -t onnx-sagemaker --name churn --input-path /tmp/churn-rows.json
mlflow deployments delete -t onnx-sagemaker --name churn      # stops the billing
