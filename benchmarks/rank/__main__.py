from benchmarks.rank.run import main

main()
