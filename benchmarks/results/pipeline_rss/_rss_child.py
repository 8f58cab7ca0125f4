
import json, os, resource, sys, time
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
n, mode, workers, cache, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
f = np.load(cache, allow_pickle=True)
u, ymask, classes = f["X"], f["Y"], list(f["C"])
from stardist_hier import HierConfig2D, HierStarDist2D
from stardist_hier.model.build import seed_everything
from stardist_hier.patches import normalize_image
X, Y, C = [], [], []
for k in range(n):  # every patch its own buffer, as load_split gives them
    j = k % len(u)
    X.append(u[j].copy() if mode == "uint8" else normalize_image(u[j]))
    Y.append(ymask[j].copy())
    C.append(dict(classes[j]))
del u, ymask, f

def status_mb(key):
    return [int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith(key + ":")][0]

rss_data = status_mb("VmRSS")
seed_everything(0)
m = HierStarDist2D(HierConfig2D(hierarchy="default", n_rays=16, n_channel_in=3, grid=(2, 2), unet_n_depth=1,
                                unet_n_filter_base=4, net_conv_after_unet=8, train_patch_size=(size, size),
                                train_batch_size=4, train_reduce_lr=None), basedir=None)
t0 = time.perf_counter()
m.train(X, Y, classes=C, dataset="pannuke", validation_data=(X[:8], Y[:8], C[:8]), epochs=1, steps_per_epoch=4,
        seed=0, verbose=0, workers=workers, normalize=(mode == "uint8"))
print("RESULT " + json.dumps(dict(peak_rss_mb=round(status_mb("VmHWM"), 1), rss_with_data_mb=round(rss_data, 1),
                                  rss_after_training_mb=round(status_mb("VmRSS"), 1),
                                  image_mb=round(sum(x.nbytes for x in X) / 2**20, 1),
                                  mask_mb=round(sum(y.nbytes for y in Y) / 2**20, 1),
                                  train_seconds=round(time.perf_counter() - t0, 2))))
