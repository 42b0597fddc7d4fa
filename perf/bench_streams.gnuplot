# bench_streams.gnuplot — capture-to-event latency over time, ring against fifo, from the
# lat_<policy>.dat files perf/bench_streams.sh leaves in $KEEP:
#   gnuplot -e "dir='/tmp/bench_streams.XXXX'" perf/bench_streams.gnuplot   -> $dir/latency.png
if (!exists("dir")) dir = "."
set terminal pngcairo size 1000,600
set output dir."/latency.png"
set title "camera streams: capture-to-event latency per analysed frame"
set xlabel "time since the first frame (s)"
set ylabel "latency (ms)"
set logscale y
set key top left
plot dir."/lat_ring.dat" using 1:2 with points pt 7 ps 0.3 title "ring (newest frame first)", \
     dir."/lat_fifo.dat" using 1:2 with points pt 7 ps 0.3 title "fifo (every frame in order)"
