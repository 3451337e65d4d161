// Job DSL seed (run by JCasC, jenkins/casc/jenkins.yaml): one folder with the main CI/CD
// pipeline and the four pipelines under jenkins/pipelines/, all read from this repository.
// MLOPS_REPO_URL / MLOPS_REPO_BRANCH / MLOPS_REPO_CREDENTIALS come from the controller's
// environment (jenkins/docker-compose.yml).
String setting(String name, String fallback) {
    String value = System.getenv(name)
    return value ? value : fallback
}

def repoUrl = setting('MLOPS_REPO_URL', 'file:///workspace/mlops-chain')
def repoBranch = setting('MLOPS_REPO_BRANCH', 'main')
def repoCredentials = setting('MLOPS_REPO_CREDENTIALS', null)  // null: a public repository

folder('mlops') {
    displayName('MLOps chain')
    description('Data, training, quality and deploy pipelines of mlops-chain (Jenkinsfile in the repo).')
}

multibranchPipelineJob('mlops/main') {
    displayName('main CI/CD')
    branchSources {
        branchSource {
            source {
                git {
                    id('mlops-main')
                    remote(repoUrl)
                    credentialsId(repoCredentials)
                    traits {
                        gitBranchDiscovery()
                    }
                }
            }
        }
    }
    factory {
        workflowBranchProjectFactory {
            scriptPath('Jenkinsfile')
        }
    }
    orphanedItemStrategy {
        discardOldItems {
            numToKeep(10)
        }
    }
}

// one job per pipeline file; the contract test checks this list against jenkins/pipelines/
def pipelines = [
    [name: 'data', script: 'jenkins/pipelines/data.Jenkinsfile',
     summary: 'Validate and fingerprint the data; starts training'],
    [name: 'training', script: 'jenkins/pipelines/training.Jenkinsfile',
     summary: 'Tune, register, promotion gate'],
    [name: 'quality', script: 'jenkins/pipelines/quality.Jenkinsfile',
     summary: 'Linters, type check, security, tests with coverage, SonarQube quality gate'],
    [name: 'deploy', script: 'jenkins/pipelines/deploy.Jenkinsfile',
     summary: 'Build and push the image, deploy to Minikube'],
]

pipelines.each { pipeline ->
    pipelineJob("mlops/${pipeline.name}") {
        description(pipeline.summary)
        definition {
            cpsScm {
                scm {
                    git {
                        remote {
                            url(repoUrl)
                            credentials(repoCredentials)
                        }
                        branch("*/${repoBranch}")
                    }
                }
                scriptPath(pipeline.script)
                lightweight(true)
            }
        }
    }
}
