"""Multi-machine training on TensorFlow's gRPC runtime: TF1 between-graph replication.

Two ways to describe the cluster (the README has full commands):

* the standard ``TF_CONFIG`` environment variable, one per process, e.g. for the first worker

      TF_CONFIG='{"cluster": {"ps": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222", "10.0.0.3:2222"]},
                  "task": {"type": "worker", "index": 0}}' python train.py --config_path ... --logdir ...

  Every process runs train.py: a "ps" task starts its server and serves variables until killed; a "worker"
  (or "chief") task starts its server and trains. The chief is the "chief" task if the cluster has one, else
  worker 0.
* TF-Slim's flags ``--master grpc://host:port --task K --num_ps_tasks P [--num_replicas R]`` for workers
  whose gRPC servers (knowing the cluster) already run, e.g. started by a cluster manager; worker 0 is chief.

Variables are placed on the parameter servers round-robin by ``tf.train.replica_device_setter``; each worker
computes on its own devices. With ``--sync_replicas`` gradients of ``num_replicas`` workers are aggregated per
step (tf.train.SyncReplicasOptimizer); by default workers update asynchronously, so a worker that dies does not
stop the others and a restarted worker rejoins (it waits for the chief's variables and continues).
"""
import collections
import json
import os

from libs.compat import tf
from libs.config_errors import UserError

logger = tf.get_logger()


class ClusterConfig(collections.namedtuple('ClusterConfig', [
    'cluster_spec', 'job_name', 'task_index', 'is_chief', 'num_ps_tasks', 'num_replicas', 'sync_replicas',
    'target'])):
  """Where this process sits in a training cluster.

  cluster_spec: tf.train.ClusterSpec, or None when only --master is known.
  job_name, task_index: this process' job ('ps', 'worker' or 'chief') and index.
  is_chief: this worker initialises variables and writes checkpoints and summaries.
  num_ps_tasks: parameter servers holding the variables.
  num_replicas: workers taking part in synchronous aggregation.
  sync_replicas: aggregate gradients synchronously.
  target: session target ('grpc://...').
  """

  @property
  def worker_device(self):
    return '/job:%s/task:%d' % (self.job_name, self.task_index)

  def device_setter(self):
    """Device function placing variables on the parameter servers and everything else on this worker."""
    return tf.train.replica_device_setter(ps_tasks=self.num_ps_tasks, worker_device=self.worker_device,
                                          cluster=self.cluster_spec)

  def device_filters(self):
    return ['/job:ps', self.worker_device]


def from_tf_config(tf_config, sync_replicas=False):
  """Parses a TF_CONFIG JSON string. Returns None for an empty one.

  Raises:
    ValueError: naming TF_CONFIG and what is wrong (bad JSON, missing cluster/task, unknown task type,
      index out of range).
  """
  if not tf_config:
    return None
  try:
    parsed = json.loads(tf_config)
  except ValueError as e:
    raise UserError('TF_CONFIG is not valid JSON: %s' % e) from None
  cluster = parsed.get('cluster') or {}
  task = parsed.get('task') or {}
  job, index = task.get('type'), task.get('index', 0)
  if not cluster:
    raise UserError('TF_CONFIG = %r: needs a "cluster" with "ps" and "worker" jobs' % tf_config)
  if job not in ('ps', 'worker', 'chief'):
    raise UserError('TF_CONFIG task.type = %r: allowed: "ps", "worker", "chief"' % (job,))
  if job not in cluster or not 0 <= index < len(cluster[job]):
    raise UserError('TF_CONFIG task = %r: no such task in cluster %r' % (task, cluster))
  num_ps = len(cluster.get('ps', []))
  if num_ps == 0:
    raise UserError('TF_CONFIG cluster %r: between-graph training needs at least one "ps" task' % (cluster,))
  is_chief = job == 'chief' or (job == 'worker' and index == 0 and 'chief' not in cluster)
  num_replicas = len(cluster.get('worker', [])) + len(cluster.get('chief', []))
  return ClusterConfig(tf.train.ClusterSpec(cluster), job, index, is_chief, num_ps, num_replicas,
                       sync_replicas, target=None)


def from_flags(master, task, num_ps_tasks, num_replicas, sync_replicas=False):
  """Cluster of TF-Slim style flags; None when training in one process (no --master, no ps tasks)."""
  if not master and num_ps_tasks == 0:
    if sync_replicas:
      raise UserError('--sync_replicas needs a cluster (--master/--num_ps_tasks or TF_CONFIG)')
    return None
  if not master:
    raise UserError("--num_ps_tasks %d needs --master (the grpc:// address of this worker's server)"
                    % num_ps_tasks)
  if num_ps_tasks <= 0:
    raise UserError('--master %s needs --num_ps_tasks > 0 (variables live on parameter servers)' % master)
  if task < 0 or num_replicas <= 0 or task >= num_replicas:
    raise UserError('--task %d must be in [0, --num_replicas %d)' % (task, num_replicas))
  return ClusterConfig(None, 'worker', task, task == 0, num_ps_tasks, num_replicas, sync_replicas,
                       target=master)


def resolve(master='', task=0, num_ps_tasks=0, num_replicas=1, sync_replicas=False, environ=None):
  """The cluster from TF_CONFIG if set, else from the flags; None for single-process training."""
  environ = os.environ if environ is None else environ
  tf_config = environ.get('TF_CONFIG', '')
  if tf_config and master:
    raise UserError('Both TF_CONFIG and --master are set; describe the cluster one way')
  if tf_config:
    return from_tf_config(tf_config, sync_replicas)
  return from_flags(master, task, num_ps_tasks, num_replicas, sync_replicas)


def start_server(cluster_config):
  """Starts this process' gRPC server (TF_CONFIG clusters) and returns the config with its target.

  A parameter server serves until the process is killed and never returns.
  """
  if cluster_config.cluster_spec is None:
    return cluster_config
  server = tf.train.Server(cluster_config.cluster_spec, job_name=cluster_config.job_name,
                           task_index=cluster_config.task_index,
                           config=tf.ConfigProto(allow_soft_placement=True))
  logger.info('Started %s task %d at %s.', cluster_config.job_name, cluster_config.task_index, server.target)
  if cluster_config.job_name == 'ps':
    logger.info('Parameter server: serving variables until killed.')
    server.join()
  return cluster_config._replace(target=server.target)
