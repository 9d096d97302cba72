"""Training-time corruptions: pure TensorFlow ops that run inside ``tf.data`` pipelines."""
