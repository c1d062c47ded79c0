/* Channel and spatial attention for images (SE, CBAM, reverse attention). */
#include "attncore/attn.h"
