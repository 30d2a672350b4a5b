FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
ENV MINIPACS_DATA_DIR=/data MINIPACS_HTTP_HOST=0.0.0.0
VOLUME ["/data"]
EXPOSE 8042 11112
CMD ["minipacs", "serve"]
