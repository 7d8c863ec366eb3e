"""The main file of streamrec's SparkApplications: runs ``streamrec <arguments>``.

spark-submit runs a Python application from a ``.py`` file, not from a console script, so the
SparkApplications (infra/k8s/base/spark-ingest.yaml, infra/k8s/jobs/features-build.yaml) name
this file, as the image holds it (/opt/streamrec/infra/k8s/spark/streamrec_main.py), and pass
the command in ``arguments``, e.g. ``["features", "build", "--incremental"]``. The Spark
session streamrec makes then joins the driver spark-submit started (STREAMREC_SPARK_MASTER is
set to the same k8s:// master in those manifests).
"""

import sys

from infra.cli import main

if __name__ == "__main__":
    sys.argv[0] = "streamrec"
    main()
