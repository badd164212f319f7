from services.editor.cli import main

main()
