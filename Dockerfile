# Image for every Airflow component and Celery worker of the distributed topology.
# No secret is baked in: connections and keys come from the environment at run time.
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-libmysqlclient-dev pkg-config gcc \
    && rm -rf /var/lib/apt/lists/*
USER airflow

COPY requirements.txt /opt/medins/requirements.txt
RUN pip install --no-cache-dir -r /opt/medins/requirements.txt

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
COPY --chown=airflow:root include /opt/airflow/include
COPY --chown=airflow:root sql /opt/airflow/sql
COPY --chown=airflow:root scripts /opt/airflow/scripts
ENV PYTHONPATH=/opt/airflow/plugins:/opt/airflow/include
