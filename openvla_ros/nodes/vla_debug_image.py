"""The debug image of vla_node: the model input with the prediction drawn on it."""
from __future__ import annotations

import numpy as np

# A full-length arrow (half the image) stands for this translation; Bridge steps are ~1-3 cm.
ARROW_FULL_SCALE_M = 0.05
DISPLAY_SIZE = 224   # the remote backend's display size (its server's preprocessing is not known)


def model_input_view(rgb: np.ndarray, policy=None) -> np.ndarray:
    """The image the model sees, as H x W x 3 uint8.

    With a local engine: the engine's own pixel values for the configured pipeline
    (``processor``, ``bridge_eval``, ``center_crop``), un-normalised with the first backbone's
    mean and std, so the view is exactly its input up to uint8 rounding. Without one (remote
    backend): the camera frame resized to 224x224 for display only."""
    pixel_values = getattr(policy, 'pixel_values', None)
    processor = getattr(policy, 'processor', None)
    if pixel_values is None or processor is None:
        from PIL import Image

        return np.asarray(Image.fromarray(rgb).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.BICUBIC))
    first = processor.transforms[0]
    x = pixel_values(rgb)[:3].detach().float().cpu().numpy()
    mean = np.asarray(first.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(first.std, np.float32).reshape(3, 1, 1)
    return np.clip(np.rint((x * std + mean) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def render(rgb: np.ndarray, instruction: str, translation_xyz, gripper: float, policy=None) -> np.ndarray:
    """Return the model input view (see :func:`model_input_view`) as uint8 RGB with the
    instruction text, the translation arrow (base-frame x forward drawn up, y left drawn left: a
    top view) and the gripper state drawn on it."""
    import cv2

    img = np.ascontiguousarray(model_input_view(rgb, policy)).copy()  # cv2 draws in place
    h, w = img.shape[:2]
    cu, cv_ = w // 2, h // 2
    half = min(w, h) / 2 - 8
    dx, dy = float(translation_xyz[0]), float(translation_xyz[1])
    u = int(round(cu - np.clip(dy / ARROW_FULL_SCALE_M, -1, 1) * half))
    v = int(round(cv_ - np.clip(dx / ARROW_FULL_SCALE_M, -1, 1) * half))
    cv2.arrowedLine(img, (cu, cv_), (u, v), (255, 40, 40), 2, cv2.LINE_AA, tipLength=0.25)
    cv2.circle(img, (cu, cv_), 3, (255, 255, 255), -1, cv2.LINE_AA)
    is_open = gripper >= 0.5
    label = f'gripper {"open" if is_open else "closed"} ({gripper:.2f})'
    cv2.rectangle(img, (0, h - 16), (w, h), (0, 0, 0), -1)
    cv2.putText(img, label, (4, h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                (80, 255, 80) if is_open else (255, 180, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, (0, 0), (w, 16), (0, 0, 0), -1)
    text = instruction if len(instruction) <= 44 else instruction[:41] + '...'
    cv2.putText(img, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return img
