"""Builds the tf.data input pipeline of segmentation examples from an InputReader config.

    dataset = dataset_builder.build(configs['train_input_reader'], batch_size=8, num_classes=19,
                                    preprocess_fn=preprocessor_builder.build(train_config.preprocessor_step))
    batch = tf.data.make_one_shot_iterator(dataset).get_next()

Pipeline: list the TFRecord files (every input_path entry is a glob) -> shuffle the file list -> read files
interleaved -> take num_examples -> shuffle the serialized records -> repeat num_epochs -> parse, decode and
check the label values -> preprocess -> (buffer examples) -> batch -> prefetch batches.

Records are shuffled while still serialized (a compressed frame is far smaller than a decoded one), and
label values are checked before any augmentation so that a broken record is reported by its filename
instead of surfacing later as an out-of-range class in the loss.

Every record carries the path of its record file through the pipeline, so that a record without a required
feature, an undecodable image and a failed label check name the file; a truncated or corrupt file (which the
reader reports without its name) is found by naming_record_errors(), which wraps the code that consumes the
input and turns those errors into a UserError naming the file.
"""
import contextlib
import inspect
import re

from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import UserError
from libs.config_errors import require_oneof
from libs.standard_fields import InputDataFields
from libs.standard_fields import TfExampleFields

# Enough to print every distinct bad value of a uint8 label.
_SUMMARIZE = 256
# In every run-time check message of a record: what naming_record_errors() recognises as an input error.
RECORD_FILE_MARKER = '(record file '
# Leading bytes of the formats tf.io.decode_image reads.
_IMAGE_SIGNATURES = (b'\x89PNG', b'\xff\xd8\xff', b'GIF8', b'BM', b'RIFF')
_PNG_SIGNATURE = b'\x89PNG'


def _list_input_files(reader_config, field_path):
  """Expands the input_path globs, in config order (each glob's matches sorted).

  Args:
    reader_config: TFRecordInputReader message.
    field_path: dotted path of reader_config.

  Returns:
    List of file paths.

  Raises:
    ConfigError: no input_path entry, or an entry matching no file.
  """
  if not reader_config.input_path:
    raise ConfigError(field_path + '.input_path', [], 'must list at least one TFRecord file or glob')
  files = []
  for index, pattern in enumerate(reader_config.input_path):
    matches = sorted(tf.io.gfile.glob(pattern)) if pattern else []
    if not matches:
      raise ConfigError('%s.input_path[%d]' % (field_path, index), pattern,
                        'must name an existing TFRecord file or a glob matching at least one file')
    files.extend(matches)
  return files


def _accepts_filename(fn):
  """Whether fn takes a `filename` keyword argument (see build(): preprocess_fn)."""
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return 'filename' in parameters


def _check_label_values(label, filename, num_classes, ignore_label):
  """Returns label, with a run-time check that every value is a class id or the ignore label.

  Args:
    label: uint8 [H, W, 1].
    filename: string scalar, named in the error.
    num_classes: valid ids are [0, num_classes).
    ignore_label: the one other allowed value.

  Returns:
    label, unchanged, depending on the check; running it raises tf.errors.InvalidArgumentError naming the
    record's filename and the distinct bad values when the check fails.
  """
  with tf.name_scope('check_label_values'):
    values = tf.reshape(tf.cast(label, tf.int32), [-1])
    valid = tf.logical_or(values < num_classes, tf.equal(values, ignore_label))

    def _fail():
      # Only a broken record pays for collecting its bad values.
      bad_values = tf.unique(tf.boolean_mask(values, tf.logical_not(valid))).y
      assert_op = tf.debugging.Assert(
          False,
          ['Label values outside [0, %d) and other than the ignore label %d in record' %
           (num_classes, ignore_label), filename, 'bad values:', bad_values],
          summarize=_SUMMARIZE)
      with tf.control_dependencies([assert_op]):
        return tf.constant(False)

    checked = tf.cond(tf.reduce_all(valid), lambda: tf.constant(True), _fail)
    with tf.control_dependencies([checked]):
      return tf.identity(label)


def _read_record_file(path):
  """The records of one file, each paired with the file's path (named in the checks' messages)."""
  return tf.data.TFRecordDataset(path).map(lambda record: (record, path))


def _check_encoded(encoded, key, signatures, what, where):
  """Returns encoded, with a run-time check that the required feature is there and starts like one of the
  formats its decoder reads (the decoders' own errors name neither the record nor the file)."""
  present = tf.debugging.Assert(
      tf.strings.length(encoded) > 0,
      [tf.strings.join(['Record ', where, ' has no feature "%s" (required: the %s)' % (key, what)])])
  prefixes = tf.stack([tf.equal(tf.strings.substr(encoded, 0, len(sig)), sig) for sig in signatures])
  with tf.control_dependencies([present]):
    known = tf.debugging.Assert(
        tf.reduce_any(prefixes),
        [tf.strings.join(['Record ', where, ': feature "%s" is not a %s' % (key, what)])])
  with tf.control_dependencies([known]):
    return tf.identity(encoded)


def _decode_fn(num_classes, ignore_label, preprocess_fn):
  """Returns the function mapping (serialized tf.train.Example, record file) to a preprocessed example dict."""
  # Required features default to '' so that a missing one is reported by _check_encoded, naming the file.
  features = {
      TfExampleFields.image_encoded: tf.io.FixedLenFeature([], tf.string, default_value=''),
      TfExampleFields.filename: tf.io.FixedLenFeature([], tf.string, default_value=''),
      TfExampleFields.segmentation_class_encoded: tf.io.FixedLenFeature([], tf.string, default_value=''),
  }
  pass_filename = preprocess_fn is not None and _accepts_filename(preprocess_fn)

  # The function only composes TF ops (no Python control flow on tensors): autograph has nothing to
  # convert, and skipping it keeps the traced graph exactly what is written here.
  @tf.autograph.experimental.do_not_convert
  def decode(serialized, record_file):
    parsed = tf.io.parse_single_example(serialized, features)
    filename = parsed[TfExampleFields.filename]
    # The record's own name and its file, for the run-time checks' messages.
    where = tf.strings.join([filename, ' ' + RECORD_FILE_MARKER, record_file, ')'])
    encoded_image = _check_encoded(parsed[TfExampleFields.image_encoded], TfExampleFields.image_encoded,
                                   _IMAGE_SIGNATURES, 'PNG, JPEG, GIF, BMP or WebP image', where)
    encoded_label = _check_encoded(parsed[TfExampleFields.segmentation_class_encoded],
                                   TfExampleFields.segmentation_class_encoded, (_PNG_SIGNATURE,),
                                   'PNG label map', where)
    # decode_image handles PNG and JPEG; expand_animations=False keeps a static rank of 3.
    image = tf.io.decode_image(encoded_image, channels=3, expand_animations=False)
    label = tf.io.decode_png(encoded_label, channels=1)
    image_size = tf.shape(image)[:2]
    label_size = tf.shape(label)[:2]
    same_size = tf.debugging.Assert(
        tf.reduce_all(tf.equal(image_size, label_size)),
        ['Image and label sizes differ in record', where, 'image (h, w):', image_size,
         'label (h, w):', label_size])
    with tf.control_dependencies([same_size]):
      label = _check_label_values(label, where, num_classes, ignore_label)
    image = tf.cast(image, tf.float32)
    if preprocess_fn is not None:
      if pass_filename:
        image, label = preprocess_fn(image, label, filename=where)
      else:
        image, label = preprocess_fn(image, label)
    return {
        InputDataFields.image: image,
        InputDataFields.labels_class: label,
        InputDataFields.filename: filename,
        InputDataFields.original_height: image_size[0],
        InputDataFields.original_width: image_size[1],
    }

  return decode


def build(input_reader_config, batch_size, num_classes, ignore_label=255, preprocess_fn=None,
          field_path='train_input_reader', num_parallel_calls=None, example_buffer=0,
          prefetch_batches=0, drop_remainder=True, seed=None):
  """Builds a batched dataset of segmentation examples.

  Args:
    input_reader_config: InputReader message.
    batch_size: examples per batch (> 0). Batches > 1 need preprocessing that fixes the example size.
    num_classes: label values must be in [0, num_classes) or equal ignore_label.
    ignore_label: the label value of ignored pixels (0..255).
    preprocess_fn: None, or a function (image, label) -> (image, label) on one example (image float32
      [H, W, 3] in [0, 255], label uint8 [H, W, 1]), e.g. from preprocessor_builder.build() or
      eval_input_builder.build()'s. When it takes a `filename` keyword argument it also receives the record's
      filename (string scalar), so that its run-time checks can name the record.
    field_path: dotted path of input_reader_config, for error messages.
    num_parallel_calls: parallel decode/preprocess calls when the config's num_parallel_calls is 0;
      None or 0 means AUTOTUNE.
    example_buffer: preprocessed examples prefetched before batching (0: none).
    prefetch_batches: batches prefetched after batching (0: AUTOTUNE).
    drop_remainder: drop a last partial batch, so that the batch dimension is static.
    seed: seed of the file and record shuffles. With a seed (or with shuffle off) the reading order is
      also deterministic; without one, parallel reads may be reordered for throughput.

  Returns:
    tf.data.Dataset of dicts (keys from InputDataFields):
      image: float32 [N, H, W, 3], RGB in [0, 255], not mean-subtracted;
      labels_class: uint8 [N, H, W, 1];
      filename: string [N];
      original_height, original_width: int32 [N], size of the decoded image before preprocessing.

  Raises:
    ConfigError: a config value that is not allowed, including an input_path glob matching no file.
    ValueError: a bad argument, or batch_size > 1 with preprocessing that does not fix the example size.
  """
  if batch_size <= 0:
    raise ValueError('batch_size must be > 0, got %r' % (batch_size,))
  if num_classes <= 0:
    raise ValueError('num_classes must be > 0, got %r' % (num_classes,))
  if not 0 <= ignore_label <= 255:
    raise ValueError('ignore_label must fit a uint8 label (0..255), got %r' % (ignore_label,))
  require_oneof(input_reader_config, 'input_reader', field_path)
  files = _list_input_files(input_reader_config.tf_record_input_reader,
                            field_path + '.tf_record_input_reader')
  config = input_reader_config
  if config.num_readers == 0:
    raise ConfigError(field_path + '.num_readers', config.num_readers, 'must be > 0')
  if config.shuffle and config.shuffle_buffer_size == 0:
    raise ConfigError(field_path + '.shuffle_buffer_size', config.shuffle_buffer_size,
                      'must be > 0 when shuffle is true')

  parallel_calls = config.num_parallel_calls or num_parallel_calls or tf.data.AUTOTUNE
  deterministic = (not config.shuffle) or seed is not None

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if config.shuffle:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(_read_record_file,
                               cycle_length=min(config.num_readers, len(files)),
                               block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=deterministic)
  if config.num_examples > 0:
    dataset = dataset.take(config.num_examples)
  if config.shuffle:
    dataset = dataset.shuffle(config.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
  # num_epochs == 0 repeats forever.
  dataset = dataset.repeat(config.num_epochs or None)
  dataset = dataset.map(_decode_fn(num_classes, ignore_label, preprocess_fn),
                        num_parallel_calls=parallel_calls, deterministic=deterministic)

  if batch_size > 1:
    _check_batchable(dataset, batch_size)
  if example_buffer > 0:
    dataset = dataset.prefetch(example_buffer)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.prefetch(prefetch_batches or tf.data.AUTOTUNE)


def _check_batchable(dataset, batch_size):
  """Raises a ValueError naming the fix when examples could have different sizes in a batch."""
  spec = dataset.element_spec
  for key in (InputDataFields.image, InputDataFields.labels_class):
    shape = spec[key].shape
    if not shape.is_fully_defined():
      raise UserError(
          'batch_size = %d needs every example to have the same size, but after preprocessing the %r '
          'shape is %s. Add a random_image_crop (or resize_image) preprocessing step after any '
          'random_image_scale, or use batch size 1.' % (batch_size, key, shape))


def no_batch_error(input_reader_config, field_path, batch_size=1, batch_field=None, max_files_named=10):
  """The error for an input that ended before its first batch: names the input_path globs, the files they match
  and the records those hold (counted up to batch_size, so a large file is not read through).

  Args:
    input_reader_config: InputReader message.
    field_path: dotted path of input_reader_config ('train_input_reader').
    batch_size: examples per batch.
    batch_field: the field batch_size comes from, for the message ('train_config.batch_size'), or None.
    max_files_named: files named in the message (the count of the others follows).

  Returns:
    ConfigError (to raise).
  """
  reader = input_reader_config.tf_record_input_reader
  files = _list_input_files(reader, field_path + '.tf_record_input_reader')
  described = []
  total = 0
  for path in files:
    if total >= batch_size:
      described.append('%s (not counted)' % path)
      continue
    count = 0
    for _ in tf.io.tf_record_iterator(path):
      count += 1
      if total + count >= batch_size:
        break
    described.append('%s (%s%d records)' % (path, '>= ' if total + count >= batch_size else '', count))
    total += count
  named = ', '.join(described[:max_files_named])
  if len(files) > max_files_named:
    named += ' and %d more' % (len(files) - max_files_named)
  if total == 0:
    holding = 'no example'
  else:
    holding = '%s%d examples (%s.num_epochs = %d, num_examples = %d)' % (
        'at least ' if total >= batch_size else 'only ', total, field_path, input_reader_config.num_epochs,
        input_reader_config.num_examples)
  wanted = ('one batch of %d examples (%s)' % (batch_size, batch_field)) if batch_field else 'one example'
  return ConfigError(field_path + '.tf_record_input_reader.input_path', list(reader.input_path),
                     'must yield at least %s; %s hold%s %s: %s' % (
                         wanted, 'the %d files it matches' % len(files) if len(files) > 1 else 'the file it matches',
                         '' if len(files) > 1 else 's', holding, named))


def _first_bad_record_file(files):
  """(file, number of records read before the error, the reader's message) of the first file that does not read
  to its end, or None."""
  for path in files:
    count = 0
    try:
      for _ in tf.compat.v1.io.tf_record_iterator(path):
        count += 1
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
      return path, count, e.message
  return None


@contextlib.contextmanager
def naming_record_errors(input_reader_config, field_path='train_input_reader'):
  """Re-raises errors of reading or parsing the records inside the block as a UserError naming the record file.

  Wrap the code that consumes the dataset built from input_reader_config (a training or evaluation loop). A
  tf.errors.DataLossError (truncated or corrupt file: the reader does not name it) makes it read the input files
  once to find the bad one; an InvalidArgumentError of a record check (see build()) already names it and is
  shortened to its first line. Other errors pass unchanged.

  Raises:
    UserError: for an input error, naming field_path, the record file and the problem.
  """
  try:
    yield
  except tf.errors.DataLossError as e:
    try:
      files = _list_input_files(input_reader_config.tf_record_input_reader,
                                field_path + '.tf_record_input_reader')
    except ConfigError:
      raise e from None
    bad = _first_bad_record_file(files)
    if bad is None:
      raise
    path, count, message = bad
    raise UserError('%s: record file %s is corrupt or truncated after %d good record(s): %s (rewrite it, e.g. '
                    'with dataset_tools/create_cityscapes_tfrecord.py)' % (field_path, path, count, message)) from None
  except tf.errors.InvalidArgumentError as e:
    # Session.run prefixes "Graph execution error:"; the check's own line follows.
    lines = [line.strip() for line in e.message.splitlines() if RECORD_FILE_MARKER in line]
    if not lines:
      raise
    message = re.sub(r'^assertion failed: ', '', lines[0]).replace('\\"', '"')
    if message.startswith('[') and message.endswith(']') and '] [' not in message:
      message = message[1:-1]
    raise UserError('%s: %s' % (field_path, message)) from None
