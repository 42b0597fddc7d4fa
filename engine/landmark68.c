/*
 * landmark68.c — face-api's 68-point landmark net (face_landmark_68_model).
 *
 *   input 112 x 112 x 3, (rgb - mean) / 255
 *   dense0..dense3: four dense blocks, 32/64/128/256 channels, each halving the resolution
 *     (112 -> 56 -> 28 -> 14 -> 7). A block is
 *       out1 = relu(conv0(x))            stride 2, TF "same" (pads bottom/right more)
 *       out2 = sep1(out1)                 out3 = sep2(relu(out1 + out2))
 *       out4 = sep3(relu(out1 + out2 + out3))     result = relu(out1 + out2 + out3 + out4)
 *     conv0 is a plain 3x3 convolution in dense0 and a separable one after.
 *   7x7 average pool -> 256, fully connected -> 136 = 68 (x, y) in chip-relative units.
 *
 * The running sum out1 + out2 + ... is kept in one buffer, so a block needs four activation
 * buffers whatever its depth.
 */
#include "engine/nets_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const float lm_mean[3] = { 122.782f, 117.001f, 104.298f };
static const int lm_channels[5] = { 3, 32, 64, 128, 256 };

#define LM_ACT ((size_t)56 * 56 * 32) /* the largest activation: dense0's output */

int landmark_load(fw_model *m, landmark_net *net, char *err, size_t errlen)
{
    char prefix[32];
    int fcw[2] = { 256, 136 }, fcb = 136;
    for (int d = 0; d < 4; d++) {
        int cin = lm_channels[d], cout = lm_channels[d + 1];
        landmark_block *blk = &net->dense[d];
        snprintf(prefix, sizeof prefix, "dense%d/conv0", d);
        if (d == 0) {
            if (nets_take_conv(m, prefix, "filters", 3, 3, cin, cout, &blk->first, err,
                               errlen) != 0)
                goto err;
        } else if (nets_take_sepconv(m, prefix, cin, cout, &blk->conv[0], err, errlen) != 0) {
            goto err;
        }
        for (int i = 1; i < 4; i++) {
            snprintf(prefix, sizeof prefix, "dense%d/conv%d", d, i);
            if (nets_take_sepconv(m, prefix, cout, cout, &blk->conv[i], err, errlen) != 0)
                goto err;
        }
    }
    if (!(net->fc_w = nets_take_copy(m, "fc/weights", 2, fcw, err, errlen)) ||
        !(net->fc_b = nets_take_copy(m, "fc/bias", 1, &fcb, err, errlen)))
        goto err;
    return 0;
err:
    landmark_free(net);
    return -1;
}

void landmark_free(landmark_net *net)
{
    for (int d = 0; d < 4; d++) {
        nets_conv_free(&net->dense[d].first);
        for (int i = 0; i < 4; i++)
            nets_sepconv_free(&net->dense[d].conv[i]);
    }
    free(net->fc_w);
    free(net->fc_b);
    net->fc_w = net->fc_b = NULL;
}

size_t landmark_ws_floats(void)
{
    return 4 * NETS_ROUND(LM_ACT) + NETS_ROUND(NN_COL_FLOATS);
}

double fw_landmark68_flops(void)
{
    double f = 0;
    int h = FW_LANDMARK_SIZE;
    for (int d = 0; d < 4; d++) {
        double cin = lm_channels[d], cout = lm_channels[d + 1];
        h /= 2;
        double px = (double)h * h;
        f += d == 0 ? px * 27 * cout : px * (9 * cin + cin * cout);
        f += 3 * px * (9 * cout + cout * cout);
    }
    f += 256.0 * 136;
    return 2 * f;
}

int fw_landmark68_run(const fw_nets *nets, fw_nets_ws *ws, const uint8_t *rgb, float out[136])
{
    if (!nets || !ws || !rgb || !out || ws->cap < landmark_ws_floats())
        return -1;
    const landmark_net *net = &nets->lm;
    size_t act = NETS_ROUND(LM_ACT);
    float *xb = ws->buf, *inb = xb + act, *tb = inb + act, *sb = tb + act, *col = sb + act;

    nn_tensor x = { xb, FW_LANDMARK_SIZE, FW_LANDMARK_SIZE, 3 };
    nn_normalize(rgb, x.h, x.w, lm_mean, x.d);

    for (int d = 0; d < 4; d++) {
        const landmark_block *blk = &net->dense[d];
        int pad, oh = nn_same_pad(x.h, 3, 2, &pad), c = lm_channels[d + 1];
        size_t n = (size_t)oh * (size_t)oh * (size_t)c;
        nn_tensor in = { inb, oh, oh, c }, t = { tb, oh, oh, c }, s = { sb, oh, oh, c };

        if (d == 0)
            nn_conv2d(&x, &blk->first, 2, pad, pad, NN_ACT_RELU, col, &in);
        else
            nn_sepconv2d(&x, &blk->conv[0], 2, pad, pad, NN_ACT_RELU, col, &in);
        nets_pause(ws);
        nn_sepconv2d(&in, &blk->conv[1], 1, 1, 1, NN_ACT_NONE, col, &s);
        nets_pause(ws);
        nn_add(s.d, in.d, n);                   /* s = out1 + out2 */
        nn_relu_to(s.d, in.d, n);
        nn_sepconv2d(&in, &blk->conv[2], 1, 1, 1, NN_ACT_NONE, col, &t);
        nets_pause(ws);
        nn_add(s.d, t.d, n);                    /* s += out3 */
        nn_relu_to(s.d, in.d, n);
        nn_sepconv2d(&in, &blk->conv[3], 1, 1, 1, NN_ACT_NONE, col, &t);
        nets_pause(ws);
        nn_add(s.d, t.d, n);                    /* s += out4 */
        x.h = x.w = oh;
        x.c = c;
        nn_relu_to(s.d, x.d, n);
    }
    /* 7x7 average pool, "valid", stride 2, over the 7x7 map: one 256-vector. */
    nn_tensor pooled = { tb, 1, 1, x.c };
    nn_avgpool_valid(&x, 7, 2, &pooled);
    nn_fc(pooled.d, 256, 136, net->fc_w, net->fc_b, out);
    return 0;
}
