"""DCN-v2 feature crosses over the embedded fields, built from keras-rs' FeatureCross.

An option of the shared input part (hyper-parameter `feature_cross_layers`):
with N > 0, every model reads crossed fields instead of the plain embeddings.
The fields (B, F, d) are concatenated into x0 (B, F*d) and passed through N
cross layers (Wang et al., "DCN V2", WWW 2021, eq. 1; keras_rs.layers.FeatureCross):

    x_{l+1} = x0 * (x_l W_l + b_l) + x_l          (* element-wise)

W_l is (F*d, F*d), or the low-rank U_l V_l with U_l (F*d, r) and V_l (r, F*d)
when `projection_dim` r > 0 (DCN V2 eq. 2). x_N is reshaped back to (B, F, d),
so every model's own layers (flattening MLPs, APEM's field attention) take it
unchanged; slot f of the result is no longer field f's embedding alone but its
slice of the crossed vector.
"""

from __future__ import annotations

import keras
import keras_rs
from keras import ops

from keras_models.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class FieldCross(keras.layers.Layer):
    """N stacked DCN-v2 cross layers over the concatenated field embeddings.

    num_layers: N >= 1 cross layers (keras_rs.layers.FeatureCross, named cross_0..).
    projection_dim: 0 for a full-rank W_l, r > 0 for the low-rank U_l V_l.

    Call: fields (B, F, d) -> (B, F, d), the N-th cross of x0 = reshape(fields, (B, F*d)).
    The kernels start Glorot-uniform and the biases at 0 (keras-rs' defaults).
    """

    def __init__(self, num_layers: int, projection_dim: int = 0, **kwargs):
        super().__init__(**kwargs)
        if int(num_layers) < 1:
            raise ValueError(f"FieldCross needs at least one layer, got {num_layers}")
        if int(projection_dim) < 0:
            raise ValueError(f"projection_dim must be 0 (full rank) or positive, "
                             f"got {projection_dim}")
        self.num_layers, self.projection_dim = int(num_layers), int(projection_dim)
        self.crosses = [keras_rs.layers.FeatureCross(projection_dim=self.projection_dim or None,
                                                     name=f"cross_{i}")
                        for i in range(self.num_layers)]

    def call(self, fields):
        num_fields, dim = fields.shape[1], fields.shape[2]
        x0 = ops.reshape(fields, (-1, num_fields * dim))                   # (B, F*d)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)                                               # (B, F*d)
        return ops.reshape(x, (-1, num_fields, dim))                       # (B, F, d)

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers,
                "projection_dim": self.projection_dim}


def make_field_cross(num_layers: int, projection_dim: int = 0):
    """A FieldCross named "field_cross" for N = num_layers > 0; None (no crosses) for 0."""
    if int(num_layers) < 0:
        raise ValueError(f"feature_cross_layers must be 0 (off) or positive, got {num_layers}")
    if int(num_layers) == 0:
        return None
    return FieldCross(num_layers, projection_dim, name="field_cross")
