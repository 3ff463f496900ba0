"""One converter module per framework; ``mlflow_deploy_plugins.onnx.convert.CONVERTERS`` maps
source flavors to them."""
