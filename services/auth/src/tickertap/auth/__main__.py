from tickertap.auth.main import main

main()
