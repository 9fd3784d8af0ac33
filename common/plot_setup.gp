# common.gp: the terminal every chapter's plot.gp starts with (loaded through `setup`).
# Variables from the caller: term ('png' or 'dumb') and outfile (for png).
if (term eq 'png') {
    if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {
        set terminal pngcairo size 1000,620 font ',11' noenhanced
    } else {
        set terminal png size 1000,620 noenhanced
    }
    set output outfile
} else {
    set terminal dumb size 100,28 noenhanced
    set output
}
set datafile separator "\t"
set grid
set key top left
