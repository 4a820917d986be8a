"""Does a CAM find the object? Its peak and its mask against the object's box (pure tensor functions).

A box (x0, y0, x1, y1), inclusive pixel corners of an image of W0 x H0 pixels, is the region
[x0, x1 + 1) x [y0, y1 + 1) of the image's continuous coordinates (pixel i spans [i, i + 1)). It covers
the pixels of an H x W map (the image resized) whose centres fall inside it: map pixel (r, c) has its
centre at ((c + 0.5) W0 / W, (r + 0.5) H0 / H).

- pointing: the CAM's peak lies inside the box (Zhang et al.'s pointing game);
- mask-box IoU: the mask's foreground against the box's pixels;
- the centre prior: a box of the mean box size centred in every image, scored the same way, is
  what a localiser that ignores the image gets.
"""
import torch


def box_masks(boxes, image_sizes, height, width):
    """bool [B, H, W]: the map pixels each box covers. boxes float [B, 4] (x0, y0, x1, y1);
    image_sizes [B, 2] (W0, H0) of the images the boxes were drawn on."""
    boxes, image_sizes = boxes.double(), image_sizes.double()
    columns = (torch.arange(width, dtype=torch.float64) + 0.5)[None] * image_sizes[:, :1] / width
    rows = (torch.arange(height, dtype=torch.float64) + 0.5)[None] * image_sizes[:, 1:] / height
    inside_x = (columns >= boxes[:, :1]) & (columns < boxes[:, 2:3] + 1)
    inside_y = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4] + 1)
    return inside_y[:, :, None] & inside_x[:, None, :]


def peak_positions(maps):
    """long [B, 2]: (row, column) of each map's maximum (the first one in row-major order)."""
    flat = maps.flatten(1).argmax(1)
    return torch.stack([flat // maps.shape[-1], flat % maps.shape[-1]], dim=1)


def points_inside(positions, masks):
    """bool [B]: each (row, column) falls on a True pixel of its mask."""
    rows = torch.arange(len(masks))
    return masks[rows, positions[:, 0], positions[:, 1]]


def mask_iou(first, second):
    """float [B]: IoU of two bool [B, H, W] masks per image (0 where both are empty)."""
    intersection = (first & second).flatten(1).sum(1).double()
    union = (first | second).flatten(1).sum(1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def centred_boxes(box_size, image_sizes):
    """float [B, 4]: boxes of box_size (width, height) in image pixels centred in images of image_sizes
    [B, 2] (W0, H0), as (possibly fractional) inclusive corners."""
    image_sizes = image_sizes.double()
    size = torch.as_tensor(box_size, dtype=torch.float64)
    return torch.cat([(image_sizes - size) / 2, (image_sizes + size) / 2 - 1], dim=1)


def localisation_counts(maps, foreground, boxes, image_sizes):
    """Sums over a batch, float64 [3]: (images, peaks inside their box, sum of mask-box IoU).
    maps float [B, H, W] (the CAMs whose peaks count), foreground bool [B, H, W] (the masks)."""
    truth = box_masks(boxes, image_sizes, *maps.shape[-2:])
    hits = points_inside(peak_positions(maps), truth)
    return torch.tensor([len(maps), hits.sum().item(), mask_iou(foreground, truth).sum().item()],
                        dtype=torch.float64)


def centre_prior_scores(boxes, image_sizes, height, width):
    """(pointing accuracy, mean mask-box IoU) of a box of the mean box size centred in each image, on an
    H x W map: its peak is the map's centre pixel (row H // 2, column W // 2), its mask the centred box.
    The mean size is taken over the same boxes, so the prior is, if anything, favoured."""
    sizes = (boxes[:, 2:] - boxes[:, :2] + 1).double().mean(0)
    prior = box_masks(centred_boxes(sizes, image_sizes), image_sizes, height, width)
    truth = box_masks(boxes, image_sizes, height, width)
    centre = torch.tensor([[height // 2, width // 2]]).expand(len(boxes), 2)
    return points_inside(centre, truth).double().mean().item(), mask_iou(prior, truth).mean().item()
