from benchmarks.gpu.bench import main

main()
