"""The Ray side of the project: the only package that imports Ray."""

import os

# Ray 2.60 logs an ERROR line whenever one of its own restartable actors starts with arguments
# in the object store (ray-project/ray#53727): Ray Train's PreemptionWatcher at every worker-group
# start (forwarded from the controller: this filter hides it), Ray Data's map actors in
# translation (logged by the driver's own core worker: no filter reaches it). Nothing a user of
# these jobs did or can act on. Ray's driver reads the filter for forwarded worker output when
# Ray is imported, so it is set before this package imports Ray; a filter the user sets wins.
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX",
                      r"has constructor arguments in the object store and max_restarts > 0")
