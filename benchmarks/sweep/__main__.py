from benchmarks.sweep.run import main

main()
