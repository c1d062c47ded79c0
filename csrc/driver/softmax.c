/* Row softmax and Nadaraya-Watson kernel regression (attncore.softmax,
 * masked_softmax, kernel_regression). */
#include "attncore/attn.h"
