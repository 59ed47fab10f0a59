"""Bulk medical-insurance interface calls (医保接口批量调用) on Apache Airflow.

The package lives in the Airflow ``plugins`` folder, which Airflow puts on ``sys.path`` for every
component; ``plugins/.airflowignore`` keeps the plugin manager from importing its modules as
plugins of their own.
"""
