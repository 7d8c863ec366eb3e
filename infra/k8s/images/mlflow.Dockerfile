# The MLflow tracking server image of infra/k8s/base/mlflow.yaml: the MLflow of the clients
# (pyproject: mlflow>=3.0,<4; 3.17 here), the PostgreSQL driver and boto3 for S3 artifacts.
# Not built by the test suite:
#   docker build -f infra/k8s/images/mlflow.Dockerfile -t <registry>/streamrec-mlflow:3.17.2 infra/k8s/images
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
 && useradd --uid 1000 --create-home mlflow
USER 1000
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
