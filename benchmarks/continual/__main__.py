from benchmarks.continual.run import main

main()
