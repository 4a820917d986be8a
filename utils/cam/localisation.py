"""Does a CAM find the object? Its peak and its mask against the object's box (pure tensor functions).

A box (x0, y0, x1, y1), inclusive pixel corners of an image of W0 x H0 pixels, is the region
[x0, x1 + 1) x [y0, y1 + 1) of the image's continuous coordinates (pixel i spans [i, i + 1)). A map of
h x w cells covers the whole image (the image is resized to the network's square input, never cropped),
so cell (r, c) spans [c W0 / w, (c + 1) W0 / w) x [r H0 / h, (r + 1) H0 / h) of the image and stands for
its centre ((c + 0.5) W0 / w, (r + 0.5) H0 / h): the same convention as bilinear upsampling with
align_corners=False. This holds for the network's own coarse map and for a map at the input's size alike.

- pointing: the map's peak (its first maximum in row-major order), as that centre, lies inside the box
  (Zhang et al.'s pointing game); a map with no positive value has no peak and counts as a miss;
- mask-box IoU: the mask's foreground against the box's pixels (the map pixels whose centre is in it);
- the centre prior: a box of the mean box size centred in every image, scored the same way, is
  what a localiser that ignores the image gets.
"""
import torch

# The maps whose peaks make_cam.py --boxes scores, in this order: each is a step of utils/cam/activation_maps.py.
POINTING_MAPS = {
    "raw_cam": "the network's own h x w CAM of the chosen class at scale 1, unflipped, as it comes out of the "
               "network (ReLU of the dense logits, no resizing)",
    "multiscale_cam": "the CAM summed over scales and flips at the input's size, before the blur",
    "blurred_cam": "the normalised, Gaussian-blurred multi-scale CAM that the masks threshold",
}


def cell_centres_in_image(cells, count, image_lengths):
    """float64: the centre, in image pixels, of cell index `cells` of `count` cells spanning an image axis
    of `image_lengths` pixels: (cell + 0.5) * length / count (broadcast)."""
    return (cells.double() + 0.5) * image_lengths.double() / count


def within(coordinates, low, high):
    """bool: low <= coordinate < high + 1, i.e. inside the inclusive pixel range low..high (broadcast)."""
    return (coordinates >= low) & (coordinates < high + 1)


def box_masks(boxes, image_sizes, height, width):
    """bool [B, H, W]: the map pixels each box covers. boxes float [B, 4] (x0, y0, x1, y1);
    image_sizes [B, 2] (W0, H0) of the images the boxes were drawn on."""
    boxes = boxes.double()
    columns = cell_centres_in_image(torch.arange(width)[None], width, image_sizes[:, :1])
    rows = cell_centres_in_image(torch.arange(height)[None], height, image_sizes[:, 1:])
    inside_x = within(columns, boxes[:, :1], boxes[:, 2:3])
    inside_y = within(rows, boxes[:, 1:2], boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def peak_positions(maps):
    """long [B, 2]: (row, column) of each map's maximum (the first one in row-major order)."""
    flat = maps.flatten(1).argmax(1)
    return torch.stack([flat // maps.shape[-1], flat % maps.shape[-1]], dim=1)


def positions_in_image(positions, map_size, image_sizes):
    """float64 [B, 2] (x, y): the centres of cells (row, column) [B, 2] of an (h, w) map, in the pixels of
    images of image_sizes [B, 2] (W0, H0) that the map covers whole."""
    height, width = map_size
    return torch.stack([cell_centres_in_image(positions[:, 1], width, image_sizes[:, 0]),
                        cell_centres_in_image(positions[:, 0], height, image_sizes[:, 1])], dim=1)


def points_in_boxes(points, boxes):
    """bool [B]: each point (x, y) in image pixels lies inside its box (x0, y0, x1, y1)."""
    boxes = boxes.double()
    return within(points[:, 0], boxes[:, 0], boxes[:, 2]) & within(points[:, 1], boxes[:, 1], boxes[:, 3])


def pointing_hits(maps, boxes, image_sizes):
    """bool [B]: the peak of each map [B, h, w] of any size, mapped into its image, lies inside its box;
    a map with no positive value (a CAM that is zero everywhere) has no peak and misses."""
    points = positions_in_image(peak_positions(maps), maps.shape[-2:], image_sizes)
    return points_in_boxes(points, boxes) & (maps.flatten(1).amax(1) > 0)


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


def localisation_counts(pointing_maps, foreground, boxes, image_sizes):
    """Sums over a batch, float64 [2 + len(pointing_maps)]: (images, for each map of pointing_maps the
    peaks inside their box, sum of mask-box IoU). pointing_maps: float [B, h, w] maps, each of its own
    size (POINTING_MAPS' order); foreground bool [B, H, W] (the masks)."""
    truth = box_masks(boxes, image_sizes, *foreground.shape[-2:])
    hits = [pointing_hits(maps, boxes, image_sizes).sum().item() for maps in pointing_maps]
    return torch.tensor([len(foreground), *hits, mask_iou(foreground, truth).sum().item()], dtype=torch.float64)


def centre_prior_pointing(boxes, image_sizes, map_size):
    """Pointing accuracy of a peak always at the centre cell (row h // 2, column w // 2) of an (h, w) map:
    what a pointer that ignores the image gets on that map's grid. On a coarse map the image's centre need
    not be a cell's centre (a 4 x 4 map of a 64 px image points at x, y in {8, 24, 40, 56} only), so each map
    is compared with the centre of its own grid."""
    height, width = map_size
    centre = torch.tensor([[height // 2, width // 2]]).expand(len(boxes), 2)
    return points_in_boxes(positions_in_image(centre, map_size, image_sizes), boxes).double().mean().item()


def centre_prior_iou(boxes, image_sizes, height, width):
    """Mean IoU with the boxes, on an H x W map, of a box of the mean box size centred in each image.
    The mean size is taken over the same boxes, so the prior is, if anything, favoured."""
    sizes = (boxes[:, 2:] - boxes[:, :2] + 1).double().mean(0)
    prior = box_masks(centred_boxes(sizes, image_sizes), image_sizes, height, width)
    truth = box_masks(boxes, image_sizes, height, width)
    return mask_iou(prior, truth).mean().item()
