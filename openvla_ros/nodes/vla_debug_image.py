"""The debug image of vla_node: the 224x224 model input with the prediction drawn on it."""
from __future__ import annotations

import numpy as np

MODEL_INPUT_SIZE = 224
# A full-length arrow (half the image) stands for this translation; Bridge steps are ~1-3 cm.
ARROW_FULL_SCALE_M = 0.05


def model_input_view(rgb: np.ndarray) -> np.ndarray:
    """What the processor feeds the model: a PIL bicubic resize to 224x224 (no crop)."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), Image.BICUBIC))


def render(rgb: np.ndarray, instruction: str, translation_xyz, gripper: float) -> np.ndarray:
    """Return a 224x224x3 uint8 RGB image: input view, instruction text, translation arrow
    (base-frame x forward drawn up, y left drawn left: a top view) and the gripper state."""
    import cv2

    img = np.array(model_input_view(rgb))  # PIL hands out a read-only view; cv2 draws in place
    c = MODEL_INPUT_SIZE // 2
    half = MODEL_INPUT_SIZE / 2 - 8
    dx, dy = float(translation_xyz[0]), float(translation_xyz[1])
    u = int(round(c - np.clip(dy / ARROW_FULL_SCALE_M, -1, 1) * half))
    v = int(round(c - np.clip(dx / ARROW_FULL_SCALE_M, -1, 1) * half))
    cv2.arrowedLine(img, (c, c), (u, v), (255, 40, 40), 2, cv2.LINE_AA, tipLength=0.25)
    cv2.circle(img, (c, c), 3, (255, 255, 255), -1, cv2.LINE_AA)
    is_open = gripper >= 0.5
    label = f'gripper {"open" if is_open else "closed"} ({gripper:.2f})'
    cv2.rectangle(img, (0, MODEL_INPUT_SIZE - 16), (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), (0, 0, 0), -1)
    cv2.putText(img, label, (4, MODEL_INPUT_SIZE - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                (80, 255, 80) if is_open else (255, 180, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, (0, 0), (MODEL_INPUT_SIZE, 16), (0, 0, 0), -1)
    text = instruction if len(instruction) <= 44 else instruction[:41] + '...'
    cv2.putText(img, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return img
