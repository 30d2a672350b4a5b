"""Pixel data for consumers: rendered images and thumbnails (PS3.18 8.3.5 and 10.4.1.1.3, WADO-URI).

    render.py     pixels + RenderAttributes + RenderOptions -> JPEG / PNG / GIF bytes
                  (PS3.3 C.11 grayscale pipeline, color conversion, viewport, encoding)
    frames.py     one frame as a numpy array: native bytes directly, compressed via pydicom
    cache.py      thread-safe LRU bounded by total size
    service.py    PixelService: render(stored, frame, options) and thumbnail(instances), reading
                  only the frame asked for, with encoded results cached
    transcode.py  stored instances and frames in another transfer syntax
"""
