"""GangSweep (Zhu et al., ACM MM 2020): backdoor detection with perturbation generators.

For every hypothetical target label t a small image-to-image generator G
(encoder, residual blocks, decoder) learns, on clean images and with the
model under test frozen, the perturbation that sends each image to t. A
backdoor shows up as a generator whose perturbation is persistent and an
outlier in how it shifts the logits. The method, the choices the paper
leaves open and the known limits are in docs/gangsweep.md.

One concept per module, as for Neural Cleanse:

| concept | module |
| --- | --- |
| the generator, its image space, logits | `nc_tf.gangsweep.generator` |
| training a label's generator | `nc_tf.gangsweep.training` |
| persistence, V, D, margin; the outlier test | `nc_tf.gangsweep.statistics` |
| the scan and its folder; loading generators | `nc_tf.gangsweep.scan` |

Every public name is importable from `nc_tf.gangsweep` itself.
"""

from nc_tf.gangsweep.generator import (  # noqa: F401
    OUTPUT_BIAS,
    batched_logits,
    build_generator,
    generate,
    logits_function,
    stamp,
    to_unit,
)
from nc_tf.gangsweep.scan import METHOD, gangsweep_scan, load_generators  # noqa: F401
from nc_tf.gangsweep.statistics import (  # noqa: F401
    AI_THRESHOLD,
    PERSISTENCE_THRESHOLD,
    STATISTICS,
    gangsweep_outliers,
    label_statistics,
)
from nc_tf.gangsweep.training import (  # noqa: F401
    ADV_TOLERANCE,
    ALPHA_FIRST,
    ALPHA_HIGH,
    ALPHA_LOW,
    COLLAPSE_L_PERT,
    MIN_STEPS_PER_EPOCH,
    PERT_TOLERANCE,
    GeneratorTrainer,
    collapsed,
    collapsed_epochs,
    train_generator,
)
