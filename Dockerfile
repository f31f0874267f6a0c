FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY gateway gateway
COPY adapters adapters
COPY dicom dicom
COPY fhirapi fhirapi
COPY seeds seeds
COPY fhir fhir
# Editable, so fhir/ (conformance resources, no Python) is read from beside the code.
RUN pip install --no-cache-dir -c constraints.txt -e .
ENV HUREN_DATA_DIR=/data
ENTRYPOINT ["huren"]
