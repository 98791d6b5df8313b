"""Quality metrics and what trains them: the Linearity network and its checkpoint loading
(``linearity``), the MobileNetV2 trunk, the stand-in metrics (``standin``), the IQA losses,
CLIVE data and synthetic distortions. ``model.MetricModel`` is the face the harness imports."""
