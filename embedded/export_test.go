package embedded

// HeapInUse is the heap in use after a GC, for the external tests' memory
// figures.
var HeapInUse = heapInUse
