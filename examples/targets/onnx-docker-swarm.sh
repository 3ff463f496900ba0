#!/usr/bin/env bash
# The onnx-docker target on Docker Swarm: N replicas behind one port, swarm rolling updates.
set -euo pipefail
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///quickstart-output/mlflow.db}
MODEL=${MODEL:-models:/churn-onnx@champion}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}

docker info --format '{{.Swarm.ControlAvailable}}' | grep -q true \
    || docker swarm init --advertise-addr 127.0.0.1
mlflow deployments create -t onnx-docker --name churn-swarm -m "$MODEL" \
    -C port=8081 -C replicas=2 -C base_image="$BASE_IMAGE"
mlflow deployments get -t onnx-docker --name churn-swarm     # replicas, update_status
mlflow deployments update -t onnx-docker --name churn-swarm  # one replica at a time
mlflow deployments delete -t onnx-docker --name churn-swarm
